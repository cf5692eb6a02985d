"""A static HTML report of one pseudo-label run: what ran, which videos to look at first, and why.

    vos report --output ./vos_output/run1 --to report/        (then open report/index.html)
    python -m jobs.report ...                                 (the same)

``index.html`` holds the run's settings and summary, a table of every video (status, error,
frames, frames/s, mean uncertainty, flagged frames) sorted so the videos most needing review
come first, and per video a strip of overlay thumbnails and plots of uncertainty and mask area
over time. Images are PNG files in ``img/`` next to it; no server, nothing fetched from the web.

Flag rules (``flag_frames``; annotated frames are never flagged, their labels are given):

* uncertainty spike: robust z-score of ``u_max_object`` (or ``u_mean``) over the video's
  predicted frames above ``SPIKE_Z`` and at least ``SPIKE_MIN_RISE`` above its median;
* area jump: an object's area changes by more than ``AREA_JUMP`` of the larger of two
  consecutive areas (it halves or doubles), for objects of at least ``AREA_MIN_PIXELS``;
* object lost: an object's area drops to 0 after being present.
"""
from __future__ import annotations

import argparse
import html
import json
import math
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from . import storage as st

SPIKE_Z = 3.5          # Iglewicz & Hoaglin's cut-off for the modified z-score
SPIKE_MIN_RISE = 0.05  # ... and at least this much U above the median (a very flat series has a tiny MAD)
SPIKE_MIN_FRAMES = 5   # fewer predicted frames: no baseline to compare against
AREA_JUMP = 0.5        # |a_t - a_t-1| / max(a_t, a_t-1): 0.5 = the area halves or doubles
AREA_MIN_PIXELS = 100  # smaller objects jitter by whole fractions of their area
THUMBNAILS = 4
THUMB_HEIGHT = 120

RULE_SPIKE, RULE_JUMP, RULE_LOST = "uncertainty spike", "area jump", "object lost"


# -- the flag rules (pure) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Flag:
    frame_index: int
    rule: str                    # RULE_SPIKE, RULE_JUMP or RULE_LOST
    value: float                 # z-score, relative area change, or the area before the loss
    object_id: int | None = None

    def describe(self) -> str:
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
    order = {RULE_SPIKE: 0, RULE_LOST: 1, RULE_JUMP: 2}
    return sorted(flags, key=lambda f: (f.frame_index, order[f.rule], f.object_id or 0))


# -- one video's series ------------------------------------------------------------------------

@dataclass
class VideoSeries:
    frame_index: np.ndarray
    annotated: np.ndarray
    u_mean: np.ndarray
    u_max_object: np.ndarray
    areas: dict[int, np.ndarray]  # object_id -> area per frame (NaN before it exists)

    @classmethod
    def from_rows(cls, rows: list[dict]) -> "VideoSeries":
        """From ``frames`` rows (frame_index, annotated, u_mean, u_max_object, objects), any order."""
        rows = sorted(rows, key=lambda r: r["frame_index"])
        n = len(rows)
        areas: dict[int, np.ndarray] = {}
        for t, r in enumerate(rows):
            for o in r["objects"] or []:
                if o["object_id"] != 0:
                    areas.setdefault(o["object_id"], np.full(n, np.nan))[t] = o["area"]

        def series(name):
            return np.array([np.nan if r[name] is None else r[name] for r in rows], np.float64)

        return cls(np.array([r["frame_index"] for r in rows], np.int64), np.array([bool(r["annotated"]) for r in rows]),
                   series("u_mean"), series("u_max_object"), dict(sorted(areas.items())))

    @property
    def uncertainty(self) -> np.ndarray:
        """The series spikes are looked for in: the least certain object's U, else the frame's."""
        return np.where(np.isnan(self.u_max_object), self.u_mean, self.u_max_object)

    def flags(self) -> list[Flag]:
        return flag_frames(self.frame_index, self.uncertainty, self.areas, self.annotated)


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
        return sorted({f.frame_index for f in self.flags})

    @property
    def mean_u(self) -> float | None:
        if self.series is None or np.isnan(self.series.u_mean).all():
            return None
        return float(np.nanmean(self.series.u_mean))

    def review_order(self):
        """Failed videos first, then the most flagged frames, then the least certain."""
        return (self.ok, -len(self.flagged_frames), -(self.mean_u or 0.0), str(self.row["video_id"]))


def load_entries(con) -> list[VideoEntry]:
    """Every video of the run with its committed frames' series and flags (a ``jobs.query.connect``)."""
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
    from .render import load_labels, rendered
    from .visual import fit, hstack, label, write_png

    wanted = thumbnail_frames(entry.series, entry.flags, count)
    labels = load_labels(layout, entry.row["video_id"], wanted)
    flagged = set(entry.flagged_frames)
    thumbs = []
    for frame, rgb in rendered(labels, "none", storage):
        thumb = label(fit(rgb, height=THUMB_HEIGHT), f"{frame.index}{' !' if frame.index in flagged else ''}")
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

    from .visual import object_colour

    s = entry.series
    fig, (ax_u, ax_a) = plt.subplots(2, 1, figsize=(8, 4.6), dpi=80, sharex=True)
    ax_u.plot(s.frame_index, s.u_mean, color="0.4", lw=1.2, label="u_mean (frame)")
    ax_u.plot(s.frame_index, s.u_max_object, color="tab:orange", lw=1.2, label="u_max_object")
    for ax in (ax_u, ax_a):
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
        if f.object_id is not None:
            y = s.areas[f.object_id][s.frame_index == f.frame_index]
            ax_a.plot([f.frame_index], y, "rx" if f.rule == RULE_LOST else "r^", ms=7)
    ax_a.set_ylabel("mask area (px)")
    ax_a.set_xlabel("frame (green: annotated, red: flagged)")
    if s.areas:
        ax_a.legend(loc="upper left", fontsize=7, ncol=4, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# -- HTML --------------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; }
table { border-collapse: collapse; margin: 8px 0 20px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.review { background: #c62828; color: #fff; padding: 1px 6px; border-radius: 3px; font-weight: 600; }
.failed { background: #6a1b9a; color: #fff; padding: 1px 6px; border-radius: 3px; font-weight: 600; }
.clean { color: #2e7d32; }
.error { color: #b71c1c; max-width: 36em; }
section { border-top: 1px solid #ddd; padding-top: 8px; margin-top: 16px; }
img { display: block; margin: 6px 0; max-width: 100%; }
code, pre { background: #f6f6f6; }
"""


def _esc(x) -> str:
    return html.escape("" if x is None else str(x))


def _num(x, fmt: str) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return format(x, fmt)


def _anchor(entry: VideoEntry) -> str:
    return f"v-{entry.row['video_key']}"


def _marker(entry: VideoEntry) -> str:
    if not entry.ok:
        return '<span class="failed">failed</span>'
    return '<span class="review">review</span>' if entry.flags else '<span class="clean">ok</span>'


def _flag_cell(entry: VideoEntry, limit: int = 12) -> str:
    frames = entry.flagged_frames
    if not frames:
        return ""
    shown = ", ".join(str(t) for t in frames[:limit])
    return f"{len(frames)}: {shown}{' ...' if len(frames) > limit else ''}"


def _summary(run: dict, entries: list[VideoEntry]) -> list[tuple[str, str]]:
    ok = [e for e in entries if e.ok]
    frames = sum(e.row["frames"] or 0 for e in ok)
    seconds = sum(e.row["seconds"] or 0 for e in ok)
    items = [("videos", f"{len(entries)}: {len(ok)} ok, {len(entries) - len(ok)} failed, "
                        f"{sum(1 for e in ok if e.flags)} to review"),
             ("frames segmented", str(frames)),
             ("worker time", f"{seconds:.1f} s ({frames / seconds:.1f} frames/s per worker)" if seconds else "-")]
    for key in ("created_at", "checkpoint_uri", "model_checksum", "manifest", "shards", "schema_version"):
        if key in run:
            items.append((key, str(run[key])))
    return items


def _settings(run: dict, entries: list[VideoEntry]) -> str:
    settings = run.get("settings")
    if settings is None:  # no _run.json: the settings every video records
        settings = next((json.loads(e.row["settings"]) for e in entries if e.row.get("settings")), {})
    return json.dumps(settings, indent=1, sort_keys=True)


def render_html(run: dict, output_uri: str, entries: list[VideoEntry]) -> str:
    title = f"vos run {run.get('run_id') or (entries[0].row['run_id'] if entries else '?')}"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
           f"<p>Output: <code>{_esc(output_uri)}</code></p>",
           "<table>"]
    out += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _summary(run, entries)]
    out += ["</table>", "<details><summary>settings</summary>", f"<pre>{_esc(_settings(run, entries))}</pre></details>",
            "<h2>Videos</h2>",
            f"<p>Most in need of review first. Flagged: uncertainty spike (robust z &gt; {SPIKE_Z:g} and "
            f"&ge; {SPIKE_MIN_RISE:g} above the video's median U), area jump (&gt; {AREA_JUMP:.0%} of the larger "
            f"area between consecutive frames, objects &ge; {AREA_MIN_PIXELS} px), object lost (area drops to 0). "
            f"Annotated frames are never flagged.</p>",
            "<table><tr><th>review</th><th>video</th><th>status</th><th>frames</th><th>frames/s</th><th>mean U</th>"
            "<th>flagged frames</th><th>error</th></tr>"]
    for e in entries:
        r = e.row
        out.append(f"<tr><td>{_marker(e)}</td><td><a href='#{_esc(_anchor(e))}'>{_esc(r['video_id'])}</a></td>"
                   f"<td>{_esc(r['status'])}</td><td class='num'>{_num(r['frames'], 'd')}</td>"
                   f"<td class='num'>{_num(r['fps'], '.1f')}</td><td class='num'>{_num(e.mean_u, '.3f')}</td>"
                   f"<td>{_esc(_flag_cell(e))}</td><td class='error'>{_esc(r['error'])}</td></tr>")
    out.append("</table>")
    for e in entries:
        r = e.row
        out.append(f"<section id='{_esc(_anchor(e))}'><h3>{_marker(e)} {_esc(r['video_id'])}</h3>")
        out.append(f"<p><code>{_esc(r['video_uri'])}</code></p>")
        if not e.ok:
            out.append(f"<p class='error'>{_esc(r['error_type'])}: {_esc(r['error'])}</p></section>")
            continue
        if e.strip:
            out.append(f"<img src='{_esc(e.strip)}' alt='overlay thumbnails of {_esc(r['video_id'])}'>")
        if e.plot:
            out.append(f"<img src='{_esc(e.plot)}' alt='uncertainty and area of {_esc(r['video_id'])}'>")
        if e.note:
            out.append(f"<p class='error'>{_esc(e.note)}</p>")
        if e.flags:
            out.append("<ul>" + "".join(f"<li>frame {f.frame_index}: {_esc(f.describe())}</li>" for f in e.flags)
                       + "</ul>")
        out.append("</section>")
    out.append("</body></html>")
    return "\n".join(out)


def write_report(output: str, to: str | None = None, thumbnails: int = THUMBNAILS, storage=None) -> str:
    """Writes ``<to>/index.html`` (and ``<to>/img/``) for the run at ``output``; returns its path."""
    from .commit import read_run
    from .query import connect
    from .render import open_layout

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


# -- command line ------------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", required=True, help="the run's --output URI (local path, file://, s3:// ...)")
    p.add_argument("--to", help="local folder for index.html and img/ (default: vos_report_<run_id>)")
    p.add_argument("--thumbnails", type=int, default=THUMBNAILS,
                   help=f"overlay thumbnails per video (default {THUMBNAILS}; 0: do not reopen the videos)")
    st.add_storage_arguments(p)


def run(args) -> int:

    storage = st.Storage.from_env(args.endpoint_url, args.storage_options)
    path = write_report(args.output, args.to, args.thumbnails, storage)
    print(f"wrote {path}")
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="static HTML report of a run: videos to review, plots, thumbnails",
                       description="Writes index.html (and img/) summarising a pseudo-label run.")
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    from .cli import run_command

    p = argparse.ArgumentParser(prog="python -m jobs.report", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.set_defaults(func=run, command="report")
    return run_command(p.parse_args(argv))


if __name__ == "__main__":
    from jobs.report import main as package_main  # see jobs.render

    sys.exit(package_main())
