"""The report's HTML page: the run, a table of every video (most in need of review first), and a
section per video with its images and flags. Everything is escaped; nothing is loaded from the web."""
from __future__ import annotations

import html
import json
import math
from typing import TYPE_CHECKING

from .flags import AREA_JUMP, AREA_MIN_PIXELS, REVIEW_QUALITY, SPIKE_MIN_RISE, SPIKE_Z

if TYPE_CHECKING:
    from .report import VideoEntry

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
    return '<span class="review">review</span>' if entry.review else '<span class="clean">ok</span>'


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
                        f"{sum(1 for e in ok if e.review)} to review"),
             ("frames segmented", str(frames)),
             ("worker time", f"{seconds:.1f} s ({frames / seconds:.1f} frames/s per worker)" if seconds else "-")]
    for key in ("created_at", "checkpoint_uri", "model_checksum", "manifest", "shards", "schema_version"):
        if key in run:
            items.append((key, str(run[key])))
    calibrated = {e.row.get("quality_calibrated") for e in ok} - {None}
    if calibrated:
        items.append(("quality estimate", "calibrated (fitted to ground truth)" if calibrated == {True} else
                      "UNCALIBRATED fallback rule: ranks frames, is not a J" if calibrated == {False} else "mixed"))
    return items


def _settings(run: dict, entries: list[VideoEntry]) -> str:
    settings = run.get("settings")
    if settings is None:  # no _run.json: the settings every video records
        settings = next((json.loads(e.row["settings"]) for e in entries if e.row.get("settings")), {})
    return json.dumps(settings, indent=1, sort_keys=True)


def _table_row(e: VideoEntry) -> str:
    r = e.row
    return (f"<tr><td>{_marker(e)}</td><td><a href='#{_esc(_anchor(e))}'>{_esc(r['video_id'])}</a></td>"
            f"<td>{_esc(r['status'])}</td><td class='num'>{_num(r['frames'], 'd')}</td>"
            f"<td class='num'>{_num(r['fps'], '.1f')}</td><td class='num'>{_num(r.get('quality_mean'), '.2f')}</td>"
            f"<td class='num'>{_num(r.get('quality_min'), '.2f')}</td><td class='num'>{_num(e.mean_u, '.3f')}</td>"
            f"<td>{_esc(_flag_cell(e))}</td><td class='error'>{_esc(r['error'])}</td></tr>")


def _video_section(e: VideoEntry) -> list[str]:
    r = e.row
    out = [f"<section id='{_esc(_anchor(e))}'><h3>{_marker(e)} {_esc(r['video_id'])}</h3>",
           f"<p><code>{_esc(r['video_uri'])}</code></p>"]
    if not e.ok:
        return out + [f"<p class='error'>{_esc(r['error_type'])}: {_esc(r['error'])}</p></section>"]
    if e.strip:
        out.append(f"<img src='{_esc(e.strip)}' alt='overlay thumbnails of {_esc(r['video_id'])}'>")
    if e.plot:
        out.append(f"<img src='{_esc(e.plot)}' alt='uncertainty and area of {_esc(r['video_id'])}'>")
    if e.note:
        out.append(f"<p class='error'>{_esc(e.note)}</p>")
    if e.flags:
        secondary = e.series is not None and e.series.has_quality
        out.append("<ul>" + "".join(f"<li>frame {f.frame_index}: {_esc(f.describe())}"
                                    f"{' (secondary)' if secondary and not f.primary else ''}</li>"
                                    for f in e.flags) + "</ul>")
    return out + ["</section>"]


def render_html(run: dict, output_uri: str, entries: list[VideoEntry]) -> str:
    title = f"vos run {run.get('run_id') or (entries[0].row['run_id'] if entries else '?')}"
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>",
           f"<style>{CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
           f"<p>Output: <code>{_esc(output_uri)}</code></p>",
           "<table>"]
    out += [f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in _summary(run, entries)]
    out += ["</table>", "<details><summary>settings</summary>", f"<pre>{_esc(_settings(run, entries))}</pre></details>",
            "<h2>Videos</h2>",
            f"<p>Most in need of review first. Flagged for review: a frame whose weakest mask has a predicted J "
            f"(quality) below the run's threshold (<code>videos.review_quality</code>, default {REVIEW_QUALITY:g}). "
            f"Secondary reasons, listed beside it (and deciding for runs without a quality estimate): uncertainty "
            f"spike (robust z &gt; {SPIKE_Z:g} and &ge; {SPIKE_MIN_RISE:g} above the video's median U), area jump "
            f"(&gt; {AREA_JUMP:.0%} of the larger area between consecutive frames, objects &ge; {AREA_MIN_PIXELS} "
            f"px), object lost (area drops to 0). Annotated frames are never flagged.</p>",
            "<table><tr><th>review</th><th>video</th><th>status</th><th>frames</th><th>frames/s</th>"
            "<th>mean quality</th><th>min quality</th><th>mean U</th><th>flagged frames</th><th>error</th></tr>"]
    out += [_table_row(e) for e in entries]
    out.append("</table>")
    for e in entries:
        out += _video_section(e)
    out.append("</body></html>")
    return "\n".join(out)
