"""Flag rules: frames whose pseudo-label is probably wrong, from the per-frame series of one video
(pure functions over numbers; annotated frames are never flagged, their labels are given).

The primary rule, where the run has a quality estimate (``frames.quality``, schema 3):

* low quality: the frame's weakest mask has a predicted J below the review threshold
  (``videos.review_quality``, default ``REVIEW_QUALITY``). It catches masks that are wrong
  throughout a video, which no rule relative to the video's own history can.

Secondary rules (the reasons given beside it; the deciding ones for runs without quality):

* uncertainty spike: robust z-score of ``u_max_object`` (or ``u_mean``) over the video's
  predicted frames above ``SPIKE_Z`` and at least ``SPIKE_MIN_RISE`` above its median;
* area jump: an object's area changes by more than ``AREA_JUMP`` of the larger of two
  consecutive areas (it halves or doubles), for objects of at least ``AREA_MIN_PIXELS``;
* object lost: an object's area drops to 0 after being present.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPIKE_Z = 3.5          # Iglewicz & Hoaglin's cut-off for the modified z-score
SPIKE_MIN_RISE = 0.05  # ... and at least this much U above the median (a very flat series has a tiny MAD)
SPIKE_MIN_FRAMES = 5   # fewer predicted frames: no baseline to compare against
AREA_JUMP = 0.5        # |a_t - a_t-1| / max(a_t, a_t-1): 0.5 = the area halves or doubles
AREA_MIN_PIXELS = 100  # smaller objects jitter by whole fractions of their area

REVIEW_QUALITY = 0.5   # the job's --review-quality default: a predicted J below this is sent to review

RULE_SPIKE, RULE_JUMP, RULE_LOST = "uncertainty spike", "area jump", "object lost"
RULE_QUALITY = "low quality"


# -- the flag rules (pure) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    frame_index: int
    rule: str                    # RULE_SPIKE, RULE_JUMP or RULE_LOST
    value: float                 # z-score, relative area change, or the area before the loss
    object_id: int | None = None

    @property
    def primary(self) -> bool:
        return self.rule == RULE_QUALITY

    def describe(self) -> str:
        if self.rule == RULE_QUALITY:
            return f"object {self.object_id}: predicted J {self.value:.2f}"
        if self.rule == RULE_SPIKE:
            return f"uncertainty spike (z={self.value:.1f})"
        if self.rule == RULE_JUMP:
            return f"object {self.object_id}: area {self.value:+.0%}"
        return f"object {self.object_id} lost (had {self.value:.0f} px)"


def robust_z(x: np.ndarray) -> np.ndarray:
    """(x - median) / robust spread; NaN stays NaN. The spread is 1.4826 * MAD, or 1.2533 * the
    mean absolute deviation when more than half the values equal the median (MAD = 0)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full_like(x, np.nan)
    ok = ~np.isnan(x)
    if not ok.any():
        return out
    dev = np.abs(x[ok] - np.median(x[ok]))
    scale = 1.4826 * np.median(dev)
    if scale == 0:
        scale = 1.2533 * dev.mean()
    out[ok] = (x[ok] - np.median(x[ok])) / scale if scale > 0 else 0.0
    return out


def flag_frames(frame_index, uncertainty, areas: dict[int, object], annotated=None, *,
                spike_z: float = SPIKE_Z, spike_min_rise: float = SPIKE_MIN_RISE,
                spike_min_frames: int = SPIKE_MIN_FRAMES, area_jump: float = AREA_JUMP,
                area_min_pixels: int = AREA_MIN_PIXELS) -> list[Flag]:
    """Frames whose label is probably wrong, from the per-frame series of one video.

    ``frame_index``: the frames in order (n); ``uncertainty``: n values (NaN = unknown);
    ``areas``: {object_id: n areas}, NaN before the object exists; ``annotated``: n booleans.
    Returns the flags sorted by frame, then rule."""
    idx = np.asarray(frame_index, dtype=np.int64)
    n = len(idx)
    given = np.zeros(n, bool) if annotated is None else np.asarray(annotated, bool)
    flags: list[Flag] = []

    u = np.asarray(uncertainty, dtype=np.float64).copy()
    u[given] = np.nan  # given labels are not predictions: neither baseline nor suspects
    if np.count_nonzero(~np.isnan(u)) >= spike_min_frames:
        z = robust_z(u)
        rise = u - np.nanmedian(u)
        for t in np.flatnonzero((z > spike_z) & (rise >= spike_min_rise)):
            flags.append(Flag(int(idx[t]), RULE_SPIKE, float(z[t])))

    for oid, series in areas.items():
        a = np.asarray(series, dtype=np.float64)
        for t in range(1, n):
            prev, cur = a[t - 1], a[t]
            if given[t] or np.isnan(prev) or np.isnan(cur) or prev <= 0:
                continue
            if cur == 0:
                flags.append(Flag(int(idx[t]), RULE_LOST, float(prev), int(oid)))
            elif max(prev, cur) >= area_min_pixels:
                change = (cur - prev) / max(prev, cur)
                if abs(change) > area_jump:
                    flags.append(Flag(int(idx[t]), RULE_JUMP, float(change), int(oid)))
    order = {RULE_QUALITY: -1, RULE_SPIKE: 0, RULE_LOST: 1, RULE_JUMP: 2}
    return sorted(flags, key=lambda f: (f.frame_index, order[f.rule], f.object_id or 0))


def flag_quality(frame_index, qualities: dict[int, object], annotated=None,
                 review_quality: float = REVIEW_QUALITY) -> list[Flag]:
    """The primary rule: one flag per frame whose weakest object's quality is below
    ``review_quality`` (``qualities``: {object_id: n qualities}, NaN where unknown or absent;
    annotated frames are never flagged). The flag names that object and its quality."""
    idx = np.asarray(frame_index, dtype=np.int64)
    n = len(idx)
    given = np.zeros(n, bool) if annotated is None else np.asarray(annotated, bool)
    if not qualities:
        return []
    oids = list(qualities)
    q = np.stack([np.asarray(qualities[o], dtype=np.float64) for o in oids])  # objects x frames
    flags = []
    for t in range(n):
        col = q[:, t]
        if given[t] or np.isnan(col).all():
            continue
        k = int(np.nanargmin(col))
        if col[k] < review_quality:
            flags.append(Flag(int(idx[t]), RULE_QUALITY, float(col[k]), int(oids[k])))
    return flags


# -- one video's series ------------------------------------------------------------------------

@dataclass
class VideoSeries:
    frame_index: np.ndarray
    annotated: np.ndarray
    u_mean: np.ndarray
    u_max_object: np.ndarray
    areas: dict[int, np.ndarray]  # object_id -> area per frame (NaN before it exists)
    qualities: dict[int, np.ndarray] = None  # object_id -> quality per frame (NaN: unknown); {} without quality
    review_quality: float = REVIEW_QUALITY

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "VideoSeries":
        """From ``frames`` rows (frame_index, annotated, u_mean, u_max_object, objects), any order.
        Objects' ``quality`` (schema 3) fills ``qualities``; runs without it get none."""
        rows = sorted(rows, key=lambda r: r["frame_index"])
        n = len(rows)
        areas: dict[int, np.ndarray] = {}
        qualities: dict[int, np.ndarray] = {}
        for t, r in enumerate(rows):
            for o in r["objects"] or []:
                if o["object_id"] != 0:
                    areas.setdefault(o["object_id"], np.full(n, np.nan))[t] = o["area"]
                    if o.get("quality") is not None:
                        qualities.setdefault(o["object_id"], np.full(n, np.nan))[t] = o["quality"]

        def series(name):
            return np.array([np.nan if r[name] is None else r[name] for r in rows], np.float64)

        return cls(np.array([r["frame_index"] for r in rows], np.int64), np.array([bool(r["annotated"]) for r in rows]),
                   series("u_mean"), series("u_max_object"), dict(sorted(areas.items())), dict(sorted(qualities.items())))

    def __post_init__(self):
        if self.qualities is None:
            self.qualities = {}

    @property
    def has_quality(self) -> bool:
        return bool(self.qualities)

    @property
    def quality(self) -> np.ndarray:
        """The frame's quality: its weakest object's (NaN where none is known)."""
        if not self.qualities:
            return np.full(len(self.frame_index), np.nan)
        weakest = np.where(np.isnan(q := np.stack(list(self.qualities.values()))), np.inf, q).min(0)
        return np.where(np.isinf(weakest), np.nan, weakest)

    @property
    def uncertainty(self) -> np.ndarray:
        """The series spikes are looked for in: the least certain object's U, else the frame's."""
        return np.where(np.isnan(self.u_max_object), self.u_mean, self.u_max_object)

    def flags(self) -> list[Flag]:
        """Every flag: the quality rule's (primary) and the relative rules' (secondary), by frame."""
        order = {RULE_QUALITY: -1, RULE_SPIKE: 0, RULE_LOST: 1, RULE_JUMP: 2}
        flags = flag_quality(self.frame_index, self.qualities, self.annotated, self.review_quality)
        flags += flag_frames(self.frame_index, self.uncertainty, self.areas, self.annotated)
        return sorted(flags, key=lambda f: (f.frame_index, order[f.rule], f.object_id or 0))


def review_frames(flags: list[Flag], has_quality: bool) -> list[int]:
    """The frames to send to review: those the quality rule flags where the run has a quality
    estimate, else (older runs) those any relative rule flags."""
    return sorted({f.frame_index for f in flags if f.primary or not has_quality})
