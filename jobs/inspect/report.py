"""A static HTML report of one pseudo-label run: what ran, which videos to look at first, and why.

``index.html`` holds the run's settings and summary, a table of every video (status, error,
frames, frames/s, mean uncertainty, flagged frames) sorted so the videos most needing review
come first, and per video a strip of overlay thumbnails and plots of uncertainty and mask area
over time. Images are PNG files in ``img/`` next to it; no server, nothing fetched from the web.
The flag rules are jobs/inspect/flags.py; the page, jobs/inspect/page.py.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from .. import storage as st
from ..layout import read_run
from .draw import draw_objects, fit, hstack, label, object_colour, write_png
from .flags import RULE_LOST, RULE_SPIKE, Flag, VideoSeries, review_frames
from .page import render_html
from .read import connect, labelled_frames, load_labels, open_layout

THUMBNAILS = 4
THUMB_HEIGHT = 120


# -- the report --------------------------------------------------------------------------------

@dataclass
class VideoEntry:
    row: dict                          # its ``videos`` record
    series: VideoSeries | None = None  # None for a failed video
    flags: list[Flag] = field(default_factory=list)
    strip: str | None = None           # image paths relative to index.html
    plot: str | None = None
    note: str | None = None            # why an image is missing

    @property
    def ok(self) -> bool:
        return self.row["status"] == "ok"

    @property
    def flagged_frames(self) -> list[int]:
        """The frames to review: low quality where the run has a quality estimate, else any flag."""
        return review_frames(self.flags, self.series is not None and self.series.has_quality)

    @property
    def review(self) -> bool:
        return self.ok and bool(self.flagged_frames)

    @property
    def quality_mean(self) -> float | None:
        q = self.row.get("quality_mean")
        return None if q is None else float(q)

    @property
    def mean_u(self) -> float | None:
        if self.series is None or np.isnan(self.series.u_mean).all():
            return None
        return float(np.nanmean(self.series.u_mean))

    def review_order(self):
        """Failed videos first, then the most flagged frames, then the lowest quality, then the least certain."""
        q = self.quality_mean
        return (self.ok, -len(self.flagged_frames), 2.0 if q is None else q, -(self.mean_u or 0.0),
                str(self.row["video_id"]))


def load_entries(con) -> list[VideoEntry]:
    """Every video of the run with its committed frames' series and flags (a ``read.connect``)."""
    videos = con.sql("SELECT * FROM videos ORDER BY video_id").to_arrow_table().to_pylist()
    rows = con.sql("SELECT video_id, frame_index, annotated, u_mean, u_max_object, objects FROM frames "
                   "ORDER BY video_id, frame_index").to_arrow_table().to_pylist()
    by_video: dict[str, list[dict]] = {}
    for r in rows:
        by_video.setdefault(r["video_id"], []).append(r)
    entries = []
    for v in videos:
        e = VideoEntry(v)
        if e.ok and by_video.get(v["video_id"]):
            e.series = VideoSeries.from_rows(by_video[v["video_id"]])
            if v.get("review_quality") is not None:  # the threshold the job counted with
                e.series.review_quality = float(v["review_quality"])
            e.flags = e.series.flags()
        entries.append(e)
    return sorted(entries, key=VideoEntry.review_order)


def thumbnail_frames(series: VideoSeries, flags: list[Flag], count: int = THUMBNAILS) -> list[int]:
    """Up to ``count`` frame indices: the first flagged ones (up to half), the rest evenly spread."""
    if count <= 0 or not len(series.frame_index):
        return []
    chosen = list(dict.fromkeys(f.frame_index for f in flags))[: count // 2]
    spread = series.frame_index[np.linspace(0, len(series.frame_index) - 1, count).round().astype(int)]
    for i in spread:
        if len(chosen) >= count:
            break
        if int(i) not in chosen:
            chosen.append(int(i))
    return sorted(chosen)


def make_strip(layout, entry: VideoEntry, path: str, count: int, storage) -> None:
    """Overlay thumbnails of a few frames side by side; flagged frames get a red border."""
    wanted = thumbnail_frames(entry.series, entry.flags, count)
    labels = load_labels(layout, entry.row["video_id"], wanted)
    flagged = set(entry.flagged_frames)
    thumbs = []
    for frame, rgb in labelled_frames(labels, storage):
        overlay = fit(draw_objects(rgb, labels.decoded(frame)), height=THUMB_HEIGHT)
        thumb = label(overlay, f"{frame.index}{' !' if frame.index in flagged else ''}")
        if frame.index in flagged:
            red = (220, 30, 30)
            thumb[:3], thumb[-3:], thumb[:, :3], thumb[:, -3:] = red, red, red, red
        thumbs.append(thumb)
    if thumbs:
        write_png(path, hstack(thumbs))


def make_plot(entry: VideoEntry, path: str) -> None:
    """Uncertainty (top) and mask area per object (bottom) over the frames, flags marked."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    s = entry.series
    if s.has_quality:
        fig, (ax_q, ax_u, ax_a) = plt.subplots(3, 1, figsize=(8, 6.4), dpi=80, sharex=True)
        for oid, q in s.qualities.items():
            ax_q.plot(s.frame_index, q, color=np.asarray(object_colour(oid)) / 255, lw=1.4, label=f"object {oid}")
        ax_q.axhline(s.review_quality, color="red", lw=0.8, ls="--", label=f"review below {s.review_quality:g}")
        ax_q.set_ylabel("quality (pred. J)")
        ax_q.set_ylim(0, 1.02)
        ax_q.legend(loc="lower left", fontsize=7, ncol=4, frameon=False)
        axes = (ax_q, ax_u, ax_a)
    else:
        fig, (ax_u, ax_a) = plt.subplots(2, 1, figsize=(8, 4.6), dpi=80, sharex=True)
        axes = (ax_u, ax_a)
    ax_u.plot(s.frame_index, s.u_mean, color="0.4", lw=1.2, label="u_mean (frame)")
    ax_u.plot(s.frame_index, s.u_max_object, color="tab:orange", lw=1.2, label="u_max_object")
    for ax in axes:
        for t in s.frame_index[s.annotated]:
            ax.axvline(t, color="tab:green", lw=0.8, alpha=0.5)
        for t in entry.flagged_frames:
            ax.axvspan(t - 0.5, t + 0.5, color="red", alpha=0.15, lw=0)
    spikes = [f.frame_index for f in entry.flags if f.rule == RULE_SPIKE]
    if spikes:
        at = np.isin(s.frame_index, spikes)
        ax_u.plot(s.frame_index[at], s.uncertainty[at], "rv", ms=6, label="spike")
    ax_u.set_ylabel("U")
    ax_u.set_ylim(0, 1.02)
    ax_u.legend(loc="upper left", fontsize=7, ncol=3, frameon=False)
    for oid, area in s.areas.items():
        ax_a.plot(s.frame_index, area, color=np.asarray(object_colour(oid)) / 255, lw=1.4, label=f"object {oid}")
    for f in entry.flags:
        if f.object_id is not None and not f.primary:
            y = s.areas[f.object_id][s.frame_index == f.frame_index]
            ax_a.plot([f.frame_index], y, "rx" if f.rule == RULE_LOST else "r^", ms=7)
    ax_a.set_ylabel("mask area (px)")
    ax_a.set_xlabel("frame (green: annotated, red: flagged)")
    if s.areas:
        ax_a.legend(loc="upper left", fontsize=7, ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(output: str, to: str | None = None, thumbnails: int = THUMBNAILS, storage=None) -> str:
    """Writes ``<to>/index.html`` (and ``<to>/img/``) for the run at ``output``; returns its path."""
    storage = storage or st.Storage.from_env()
    layout = open_layout(output, storage)
    run = read_run(layout) or {}
    entries = load_entries(connect(output, storage))
    to = to or f"vos_report_{run.get('run_id') or 'run'}"
    os.makedirs(os.path.join(to, "img"), exist_ok=True)
    for e in entries:
        if e.series is None:
            continue
        key = e.row["video_key"]
        e.plot = f"img/{key}-plot.png"
        make_plot(e, os.path.join(to, e.plot))
        if thumbnails > 0:
            try:
                make_strip(layout, e, os.path.join(to, f"img/{key}-strip.png"), thumbnails, storage)
                e.strip = f"img/{key}-strip.png"
            except Exception as err:  # frames moved or unreadable: the report still shows the numbers
                e.note = f"no thumbnails: {type(err).__name__}: {err}"
    path = os.path.join(to, "index.html")
    with open(path, "w", encoding="utf-8") as f:
        f.write(render_html(run, layout.url(), entries))
    return path
